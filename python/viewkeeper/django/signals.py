"""pre_migrate and post_migrate: drop the managed views (opt-in), then reconcile."""

import sys

from django.core.management.base import CommandError
from django.db import connections

from . import settings as vk


def _run(cfg, using, arguments, verbosity, what):
    # settings_dict at signal time: under the test runner, NAME is the test database.
    result = vk.run(cfg, arguments, connections[using].settings_dict, capture=True)
    output = result.stdout.rstrip()
    if result.returncode != 0:
        raise CommandError(
            f"viewkeeper {what} failed (exit {result.returncode}) on database "
            f"{connections[using].settings_dict.get('NAME')!r}:\n{output}"
        )
    if verbosity >= 1 and output:
        sys.stdout.write(f"viewkeeper {what}:\n{output}\n")


def drop_before_migrate(sender, using, plan=None, verbosity=1, **kwargs):
    cfg = vk.config()
    # Nothing to migrate: nothing to drop for.
    if using != cfg.database or not cfg.drop_first or not plan:
        return
    _run(cfg, using, ["drop-managed"], verbosity, "drop-managed")


def reconcile_after_migrate(sender, using, plan=None, verbosity=1, **kwargs):
    cfg = vk.config()
    # `flush` sends post_migrate too, without a plan: the views are still there.
    if using != cfg.database or plan is None:
        return
    _run(cfg, using, ["reconcile", "--keep-going"], verbosity, "reconcile")
