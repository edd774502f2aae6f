"""ROIAlign as a sparse matrix product, for the CPU.

RoIAlign is linear in the feature map: each output cell is a fixed weighted sum of feature
pixels (bilinear weights of its sampling points, divided by their count). Writing those
weights as a sparse matrix ``S`` of shape ``(R * out_h * out_w, N * H * W)`` gives the
forward pass as ``S @ features`` and the backward pass as ``S.T @ grad``, both one
multi-threaded sparse product. torchvision's CPU kernels walk the RoIs one by one on one
thread, its backward pass scattering every sample into the feature gradient; the RS RoI
heads pool all ~1,000 proposals of an image where detectron2's sample 512, so on the CPU
they would pay about twice detectron2's RoI pooling time for the same operation
(benchmarks/bench_train_step.py). The sampling points and weights follow torchvision's
``roi_align`` exactly (same float32 arithmetic); the results agree with it up to the order
of float summation (tests/test_sparse_roi_align.py). On other devices the module calls
torchvision, whose CUDA kernels are parallel already.
"""
import warnings
from typing import Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler

__all__ = ["roi_align_sampling_matrix", "sparse_roi_align", "SparseROIAlign", "use_sparse_roi_align"]

# Entries of the dense (RoIs, out_h, out_w, grid_h, grid_w, 4 corners) index tensors built
# at once; RoIs are processed in chunks so that big grids do not allocate without bound.
_MAX_CHUNK_ENTRIES = 1 << 23


def _axis_samples(start: Tensor, size: Tensor, grid: Tensor, max_grid: int, bins: int,
                  extent: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sampling coordinates along one axis, as torchvision's ``roi_align`` computes them.

    Returns, each of shape (R, bins, max_grid): whether the sample exists and lies inside
    ``[-1, extent]``, the low and high pixel index, and the weights of the low and high pixel.
    """
    dtype, device = start.dtype, start.device
    bin_size = size / bins
    i = torch.arange(max_grid, dtype=dtype, device=device)
    p = torch.arange(bins, dtype=dtype, device=device)
    grid_f = grid.to(dtype)
    v = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
         + (i + 0.5)[None, None, :] * bin_size[:, None, None] / grid_f.clamp(min=1)[:, None, None])
    valid = (i[None, None, :] < grid_f[:, None, None]) & (v >= -1.0) & (v <= extent)
    v = v.clamp(min=0)
    low = v.long()  # v >= 0: truncation is floor
    at_edge = low >= extent - 1
    low = torch.where(at_edge, torch.full_like(low, extent - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(v), v - low.to(dtype))
    return valid, low, high, 1 - frac, frac


def _chunk_entries(rois: Tensor, height: int, width: int, output_size: Tuple[int, int],
                   spatial_scale: float, sampling_ratio: int, aligned: bool
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """Non-zeros of the rows of ``rois``: (entries per row, column index, weight), row-major."""
    out_h, out_w = output_size
    num = rois.shape[0]
    dtype = rois.dtype
    offset = 0.5 if aligned else 0.0
    # torchvision: T roi_start = roi[1] * spatial_scale (double) - offset, stored as T.
    corners = (rois[:, 1:].double() * spatial_scale - offset).to(dtype)
    x1, y1, x2, y2 = corners.unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((num,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    max_h = max(int(grid_h.max()), 1)
    max_w = max(int(grid_w.max()), 1)
    vy, y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, roi_h, grid_h, max_h, out_h, height)
    vx, x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, roi_w, grid_w, max_w, out_w, width)
    # Corners in the order (y_lo, x_lo), (y_lo, x_hi), (y_hi, x_lo), (y_hi, x_hi);
    # layout (R, out_h, out_w, grid_h, grid_w, 4) so that rows come in ascending order.
    ys = torch.stack([y_lo, y_lo, y_hi, y_hi], -1)[:, :, None, :, None, :]
    xs = torch.stack([x_lo, x_hi, x_lo, x_hi], -1)[:, None, :, None, :, :]
    wys = torch.stack([wy_lo, wy_lo, wy_hi, wy_hi], -1)[:, :, None, :, None, :]
    wxs = torch.stack([wx_lo, wx_hi, wx_lo, wx_hi], -1)[:, None, :, None, :, :]
    image = rois[:, 0].long()[:, None, None, None, None, None]
    weight = wys * wxs / count[:, None, None, None, None, None]
    valid = (vy[:, :, None, :, None, None] & vx[:, None, :, None, :, None]).expand(weight.shape)
    column = (image * (height * width) + ys * width + xs).expand(weight.shape)
    per_row = valid.reshape(num * out_h * out_w, -1).sum(1)
    return per_row, column[valid], weight[valid]


def roi_align_sampling_matrix(
    rois: Tensor,
    feature_shape: Tuple[int, int, int],
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The sparse matrix ``S`` with ``roi_align(x, rois) == S @ x_flat``, in CSR parts.

    Args:
        rois: (R, 5) boxes ``(image index, x1, y1, x2, y2)`` in input-image coordinates,
            in the dtype of the features.
        feature_shape: ``(N, H, W)`` of the feature map.
        output_size, spatial_scale, sampling_ratio, aligned: as torchvision's ``roi_align``.

    Returns:
        ``(crow_indices, col_indices, values)`` of ``S``, shape ``(R * out_h * out_w, N * H *
        W)``, rows in the order of the flattened output ``(R, out_h, out_w)``, columns in
        the order of the flattened channel-last features ``(N, H, W)``.
    """
    n, height, width = feature_shape
    out_h, out_w = output_size
    num = rois.shape[0]
    crow = torch.zeros(num * out_h * out_w + 1, dtype=torch.long, device=rois.device)
    if num == 0:
        return crow, crow.new_zeros(0), rois.new_zeros(0)
    per_row, columns, values = [], [], []
    # An upper bound of the entries per RoI, from the largest sampling grid.
    step = num
    if sampling_ratio <= 0:
        size = (rois[:, 3:5] - rois[:, 1:3]).double().max().item() * spatial_scale + 1
        grid = max(int(size / min(out_h, out_w)) + 1, 1)
        per_roi = out_h * out_w * grid * grid * 4
        step = max(1, _MAX_CHUNK_ENTRIES // per_roi)
    for start in range(0, num, step):
        r, c, v = _chunk_entries(rois[start:start + step], height, width, output_size,
                                 spatial_scale, sampling_ratio, aligned)
        per_row.append(r)
        columns.append(c)
        values.append(v)
    torch.cumsum(torch.cat(per_row), 0, out=crow[1:])
    return crow, torch.cat(columns), torch.cat(values)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: Tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _transpose(crow: Tensor, col: Tensor, values: Tensor, shape: Tuple[int, int]) -> Tensor:
    """CSR of the transpose of the CSR matrix (crow, col, values) of ``shape``."""
    rows = torch.repeat_interleave(torch.arange(shape[0], device=crow.device), crow.diff())
    order = torch.argsort(col, stable=True)
    crow_t = torch.zeros(shape[1] + 1, dtype=torch.long, device=crow.device)
    torch.cumsum(torch.bincount(col, minlength=shape[1]), 0, out=crow_t[1:])
    return _csr(crow_t, rows[order], values[order], (shape[1], shape[0]))


class _SparseROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: Tuple[int, int],
                spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        n, channels, height, width = features.shape
        out_h, out_w = output_size
        crow, col, values = roi_align_sampling_matrix(
            rois, (n, height, width), output_size, spatial_scale, sampling_ratio, aligned)
        shape = (rois.shape[0] * out_h * out_w, n * height * width)
        flat = features.permute(0, 2, 3, 1).reshape(n * height * width, channels)
        out = torch.sparse.mm(_csr(crow, col, values, shape), flat)
        ctx.save_for_backward(crow, col, values)
        ctx.matrix_shape = shape
        ctx.feature_shape = features.shape
        ctx.output_size = output_size
        return out.reshape(rois.shape[0], out_h, out_w, channels).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        crow, col, values = ctx.saved_tensors
        n, channels, height, width = ctx.feature_shape
        grad_flat = grad.permute(0, 2, 3, 1).reshape(-1, channels)
        grad_features = torch.sparse.mm(_transpose(crow, col, values, ctx.matrix_shape), grad_flat)
        grad_features = grad_features.reshape(n, height, width, channels).permute(0, 3, 1, 2)
        return grad_features.contiguous(), None, None, None, None, None


def sparse_roi_align(features: Tensor, rois: Tensor, output_size: Tuple[int, int],
                     spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision's ``roi_align`` (NCHW features, (R, 5) rois) as a sparse matrix product.

    Differentiable in ``features``; no gradient flows to ``rois`` (as in torchvision).
    """
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"sparse_roi_align expects NCHW features and (R, 5) rois, got "
                         f"{tuple(features.shape)} and {tuple(rois.shape)}")
    output_size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (
        output_size, output_size)
    rois = rois.to(dtype=features.dtype).detach()
    return _SparseROIAlignFunction.apply(features, rois, output_size, float(spatial_scale),
                                         int(sampling_ratio), bool(aligned))


class SparseROIAlign(ROIAlign):
    """detectron2's :class:`ROIAlign` computed by :func:`sparse_roi_align` on the CPU.

    Same arguments and results (up to float summation order); on any other device it is
    detectron2's ROIAlign (torchvision's kernels). It also steps aside for torchvision's
    kernel while the model is traced (``torch.jit.trace``, ``TracingAdapter``), scripted
    (``torch.jit.script``, ``scripting_with_instances``) or exported to ONNX: the sparse
    product is a Python autograd Function, which TorchScript cannot save and ONNX cannot
    express, and the exported graph then holds the standard ``torchvision::roi_align`` op
    (docs/deployment.md).
    """

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            # detectron2's ROIAlign.forward, written out: TorchScript compiles no super().
            if input.is_quantized:
                input = input.dequantize()
            return roi_align(input, rois.to(dtype=input.dtype), self.output_size,
                             self.spatial_scale, self.sampling_ratio, self.aligned)
        if not self.uses_sparse(input):
            return super().forward(input, rois)
        return self._sparse_forward(input, rois)

    @staticmethod
    def uses_sparse(input: Tensor) -> bool:
        """Whether :meth:`forward` takes the sparse product for ``input``: eager mode (not
        tracing, scripting or ONNX export) with non-quantized CPU features."""
        exporting = (torch.jit.is_scripting() or torch.jit.is_tracing()
                     or torch.onnx.is_in_onnx_export())
        return not exporting and input.device.type == "cpu" and not input.is_quantized

    @torch.jit.unused
    def _sparse_forward(self, input: Tensor, rois: Tensor) -> Tensor:
        assert rois.dim() == 2 and rois.size(1) == 5
        return sparse_roi_align(input, rois, self.output_size, self.spatial_scale,
                                self.sampling_ratio, self.aligned)


def use_sparse_roi_align(pooler: ROIPooler, key: str = "POOLER_SPARSE_CPU") -> ROIPooler:
    """Make ``pooler``'s ROIAlign levels :class:`SparseROIAlign` (same settings); in place.

    Raises ValueError for pooler types other than ROIAlign / ROIAlignV2 (naming ``key``, the
    config key that asked for it).
    """
    levels = []
    for level in pooler.level_poolers:
        if type(level) is not ROIAlign and not isinstance(level, SparseROIAlign):
            raise ValueError(
                f"{key} works with POOLER_TYPE ROIAlign or ROIAlignV2, "
                f"not {type(level).__name__}; set {key} False.")
        levels.append(SparseROIAlign(level.output_size, level.spatial_scale,
                                     level.sampling_ratio, level.aligned))
    pooler.level_poolers = torch.nn.ModuleList(levels)
    return pooler
