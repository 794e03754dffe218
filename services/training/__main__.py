"""`python -m services.training [serve|migrate]`."""

from services.common.main import main
from services.training.config import TrainingSettings
from services.training.server import make_spec

main(make_spec, TrainingSettings)
