"""`python -m services.auth [serve|migrate]`."""

from services.auth.config import AuthSettings
from services.auth.server import make_spec
from services.common.main import main

main(make_spec, AuthSettings)
