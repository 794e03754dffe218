"""`python -m services.training [serve|migrate|worker]`."""

from services.common.main import main
from services.training.config import TrainingSettings
from services.training.server import make_spec
from services.training.worker import run_worker

main(make_spec, TrainingSettings, commands={"worker": run_worker})
