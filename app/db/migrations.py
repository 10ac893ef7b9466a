"""The schema's alembic scripts, as installed: configuration built here, scripts read as package
data (`pgsched/migrations`, the repository's `alembic/`) through importlib.resources, so
`pgsched migrate` works from a wheel as from a checkout. The repository's alembic.ini points at
the same scripts for developers who run `alembic` themselves."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command
from pgsched.app.settings import sqlalchemy_url

SCRIPT_LOCATION = "pgsched:migrations"


def config(url: str | None = None) -> Config:
    """An alembic Config for the packaged scripts, against `url` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # ConfigParser interpolates `%`: a password may hold one.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, target: str = "head") -> None:
    """`alembic upgrade <target>` against `url`."""
    command.upgrade(config(url), target)


def downgrade(url: str, target: str) -> None:
    """`alembic downgrade <target>` against `url`."""
    command.downgrade(config(url), target)


def head() -> str:
    """The revision the scripts end at."""
    heads = ScriptDirectory.from_config(config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {heads}")
    return heads[0]
