"""`python -m services.auth [serve|migrate|rotate-master-key]`."""

from services.auth.config import AuthSettings
from services.auth.crypto import MasterKeyError
from services.auth.keys import KeyConfigError
from services.auth.server import make_spec, rotate_master_key_command
from services.common.main import main

try:
    main(make_spec, AuthSettings, commands={"rotate-master-key": rotate_master_key_command})
except (KeyConfigError, MasterKeyError) as exc:  # refuse to start, without a traceback
    raise SystemExit(f"auth: {exc}") from None
