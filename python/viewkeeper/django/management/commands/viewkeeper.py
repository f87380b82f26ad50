"""`manage.py viewkeeper ARGS…`: the binary, with the project and Django's connection."""

import argparse
import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ... import settings as vk


class Command(BaseCommand):
    help = (
        "Runs viewkeeper (plan, status, check, import, refresh, reconcile, …) with "
        'VIEWKEEPER["PROJECT"] and the connection of VIEWKEEPER["DATABASE"]; '
        "`manage.py viewkeeper help` lists its commands."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("arguments", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv):
        # Everything after `viewkeeper` is the binary's, --help included, except Django's
        # --settings and --pythonpath (already applied); the exit status is the binary's.
        sys.exit(self._run(_without_django_options(argv[2:])))

    def handle(self, *args, arguments=(), **options):
        # call_command("viewkeeper", "status")
        code = self._run([*args, *arguments])
        if code != 0:
            raise CommandError(f"viewkeeper exited with status {code}", returncode=code)

    def _run(self, arguments):
        try:
            cfg = vk.config()
            result = vk.run(cfg, list(arguments), connections[cfg.database].settings_dict, capture=False)
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        return result.returncode


def _without_django_options(arguments):
    kept, skip_value = [], False
    for argument in arguments:
        if skip_value:
            skip_value = False
        elif argument in ("--settings", "--pythonpath"):
            skip_value = True
        elif not argument.startswith(("--settings=", "--pythonpath=")):
            kept.append(argument)
    return kept
