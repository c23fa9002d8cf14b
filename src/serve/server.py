"""`memory-models serve CONFIG`: build the service from its config and run it with uvicorn."""

from src.memory_system.database import DatabaseError
from src.serve.chat import ChatService, load_served_model
from src.serve.config import load_serve_config
from src.validation import ConfigError

SHUTDOWN_SECONDS = 5  # after SIGTERM or SIGINT, requests in flight have this long to finish, then are ended


def build_service(config_path: str) -> ChatService:
    """The service a config describes; every problem is a one-line ConfigError or CheckpointError."""
    config = load_serve_config(config_path)
    model = load_served_model(config)
    try:
        return ChatService(config, model)
    except DatabaseError as error:
        raise ConfigError(f"{config.file}: key 'database': {error}") from error
    except ImportError as error:  # the approximate index without its extra
        raise ConfigError(f"{config.file}: key 'memory.index': {error}") from error


def serve(config_path: str, host: str, port: int) -> None:
    """Serve until interrupted (SIGINT or SIGTERM): requests in flight get `SHUTDOWN_SECONDS`, then are
    cancelled (generations end at their next token) and the app closes the database on the way out."""
    import uvicorn

    from src.serve.app import create_app

    uvicorn.run(
        create_app(build_service(config_path)),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
