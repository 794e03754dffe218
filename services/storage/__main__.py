"""`python -m services.storage [serve|migrate]`."""

from services.common.main import main
from services.storage.config import StorageSettings
from services.storage.server import make_spec

main(make_spec, StorageSettings)
