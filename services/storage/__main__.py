"""`python -m services.storage [serve|migrate|sync]`."""

from services.common.main import main
from services.storage.config import StorageSettings
from services.storage.memory import tune_malloc
from services.storage.server import make_spec, sync_command

tune_malloc()
main(make_spec, StorageSettings, commands={"sync": sync_command})
