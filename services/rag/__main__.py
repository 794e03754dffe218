"""`python -m services.rag [serve|migrate]`."""

from services.common.main import main
from services.rag.config import RagSettings
from services.rag.server import make_spec

main(make_spec, RagSettings)
