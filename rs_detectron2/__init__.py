"""rs_detectron2: Rank & Sort Loss detectors as a detectron2 project extension."""
__version__ = "0.1.0"
