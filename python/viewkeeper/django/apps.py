from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate, pre_migrate


class ViewkeeperConfig(AppConfig):
    name = "viewkeeper.django"
    # "django" would clash with Django's own label.
    label = "viewkeeper"
    verbose_name = "viewkeeper"

    def ready(self):
        from . import signals
        from .checks import check_declarations

        checks.register(check_declarations)
        # sender=self: Django sends the migrate signals once per app, and we act once.
        pre_migrate.connect(signals.drop_before_migrate, sender=self)
        post_migrate.connect(signals.reconcile_after_migrate, sender=self)
