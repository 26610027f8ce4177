"""kern_d2: KERN scene graph generation as a Detectron2 project."""
from .config import add_kern_config

__version__ = "0.1.0"
__all__ = ["add_kern_config"]
