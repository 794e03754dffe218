"""`python -m services.chat [serve|migrate]`."""

from services.chat.config import ChatSettings
from services.chat.server import make_spec
from services.common.main import main

main(make_spec, ChatSettings)
