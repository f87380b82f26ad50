"""The VIEWKEEPER setting, the binary, and the connection passed to it through PG* variables."""

import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# OPTIONS of DATABASES that are libpq connection parameters, and the variables the binary
# reads them from (the ones it supports; see src/db/settings.rs).
OPTION_VARS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "passfile": "PGPASSFILE",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "channel_binding": "PGCHANNELBINDING",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}

# libpq parameters the binary does not support: better refused than silently ignored.
UNSUPPORTED_OPTIONS = {"sslcert", "sslkey", "sslcrl", "sslcrldir", "service", "gssencmode"}


@dataclass(frozen=True)
class Config:
    project: Path
    database: str
    drop_first: bool
    binary: str


def config():
    """The VIEWKEEPER setting, checked; raises ImproperlyConfigured."""
    raw = getattr(settings, "VIEWKEEPER", None)
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(
            'VIEWKEEPER must be a dict such as {"PROJECT": BASE_DIR} '
            "(the folder that holds viewkeeper.kdl)"
        )
    unknown = set(raw) - {"PROJECT", "DATABASE", "DROP_FIRST", "BINARY"}
    if unknown:
        raise ImproperlyConfigured(
            f"VIEWKEEPER has unknown keys {sorted(unknown)}; "
            "known: PROJECT, DATABASE, DROP_FIRST, BINARY"
        )
    if not raw.get("PROJECT"):
        raise ImproperlyConfigured('VIEWKEEPER["PROJECT"] must name the project folder (views/, viewkeeper.kdl)')
    project = Path(raw["PROJECT"])
    if not project.is_dir():
        raise ImproperlyConfigured(f'VIEWKEEPER["PROJECT"]: {project} is not a folder')
    database = raw.get("DATABASE", "default")
    if database not in settings.DATABASES:
        raise ImproperlyConfigured(f'VIEWKEEPER["DATABASE"]: no database {database!r} in DATABASES')
    return Config(
        project=project,
        database=database,
        drop_first=bool(raw.get("DROP_FIRST", False)),
        binary=binary(raw.get("BINARY")),
    )


def binary(override=None):
    """The binary installed with this package, else the one on PATH, unless BINARY says."""
    if override:
        return str(override)
    installed = Path(sysconfig.get_path("scripts")) / "viewkeeper"
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    found = shutil.which("viewkeeper")
    if found:
        return found
    raise ImproperlyConfigured(
        f"cannot find the viewkeeper binary in {installed.parent} nor on PATH "
        '(pip install viewkeeper, or set VIEWKEEPER["BINARY"])'
    )


def environment(settings_dict):
    """The environment for the binary: Django's connection as PG* variables, so that no
    password shows on a command line. Unset settings keep the inherited PG* variables, as
    psycopg would; DATABASE_URL is removed, since it would win over them."""
    engine = settings_dict.get("ENGINE", "")
    if "postgresql" not in engine and "postgis" not in engine:
        raise ImproperlyConfigured(f"viewkeeper needs a PostgreSQL database, not {engine!r}")
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    options = settings_dict.get("OPTIONS") or {}
    unsupported = sorted(UNSUPPORTED_OPTIONS & set(options))
    if unsupported:
        raise ImproperlyConfigured(f"viewkeeper does not support the connection options {unsupported}")
    values = {
        "PGHOST": settings_dict.get("HOST"),
        "PGPORT": settings_dict.get("PORT"),
        # Django connects to the "postgres" database when NAME is empty; so do we.
        "PGDATABASE": settings_dict.get("NAME") or "postgres",
        "PGUSER": settings_dict.get("USER"),
        "PGPASSWORD": settings_dict.get("PASSWORD"),
    }
    for option, var in OPTION_VARS.items():
        values[var] = options.get(option)
    for var, value in values.items():
        if value not in (None, ""):
            env[var] = str(value)
    env.setdefault("NO_COLOR", "1")
    return env


def run(cfg, arguments, settings_dict, capture):
    """Runs the binary with --project and `arguments`; returns the CompletedProcess.
    Without settings_dict (offline commands) the environment is passed on as it is."""
    command = [cfg.binary, "--project", str(cfg.project), *arguments]
    env = dict(os.environ) if settings_dict is None else environment(settings_dict)
    try:
        return subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL if capture else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
        )
    except OSError as error:
        raise ImproperlyConfigured(f"cannot run {cfg.binary}: {error}") from error
