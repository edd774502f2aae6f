"""detectron2's FPN with its top-down upsampling step as a method of its own, so that an
FPN variant overrides that one step (CARAFE's content-aware upsampling, YOLACT's bilinear
resize to the lateral's size) instead of restating ``FPN.forward``."""
from typing import Dict, List

import torch.nn.functional as F
from torch import Tensor

from detectron2.modeling.backbone import FPN

__all__ = ["TopDownFPN"]


class TopDownFPN(FPN):
    """:class:`detectron2.modeling.backbone.FPN` whose ``forward`` is detectron2's with the
    top-down step in :meth:`upsample_top_down` (detectron2's nearest x2 by default)."""

    def upsample_top_down(self, idx: int, coarser: Tensor, lateral: Tensor) -> Tensor:
        """The coarser merged map ``coarser`` brought to the grid of ``lateral``, the lateral
        of top-down step ``idx`` (1 = the step below the top level)."""
        return F.interpolate(coarser, scale_factor=2.0, mode="nearest")

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """detectron2's ``FPN.forward`` with :meth:`upsample_top_down` as the top-down step."""
        bottom_up_features = self.bottom_up(x)
        results: List[Tensor] = []
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev_features))
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            # ModuleList slicing is not scriptable: loop over all, skip the first (as FPN).
            if idx > 0:
                lateral_features = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])
                top_down_features = self.upsample_top_down(idx, prev_features, lateral_features)
                prev_features = lateral_features + top_down_features
                if self._fuse_type == "avg":
                    prev_features = prev_features / 2
                results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        assert len(self._out_features) == len(results)
        return {f: res for f, res in zip(self._out_features, results)}
