"""`manage.py check`: invalid declarations are system-check errors."""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import settings as vk


def check_declarations(app_configs=None, **kwargs):
    try:
        cfg = vk.config()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="viewkeeper.E001")]
    # Offline: reads the files only, so no connection settings are needed.
    try:
        result = vk.run(cfg, ["check"], None, capture=True)
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="viewkeeper.E002")]
    if result.returncode != 0:
        return [
            checks.Error(
                f"invalid view declarations in {cfg.project}",
                hint=result.stdout.strip(),
                id="viewkeeper.E003",
            )
        ]
    return []
