"""`python -m services.storage [serve|migrate|sync]`."""

from services.common.main import main
from services.storage.config import StorageSettings
from services.storage.memory import cap_malloc_arenas
from services.storage.server import make_spec, sync_command

cap_malloc_arenas()
main(make_spec, StorageSettings, commands={"sync": sync_command})
