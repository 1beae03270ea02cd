"""Training: config, loop, schedules, checkpoints/resume, distributed, weight interpolation."""
from clipforge.train.config import load_config  # noqa: F401
from clipforge.train.config_sections import TrainConfig  # noqa: F401
from clipforge.train.loop import train  # noqa: F401
