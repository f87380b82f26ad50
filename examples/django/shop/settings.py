import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only"
DEBUG = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["invoices", "viewkeeper.django"]

# The database viewkeeper works on too: no DATABASE_URL, the binary gets these as PG* variables.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("SHOP_DB_NAME", "shop"),
        "HOST": os.environ.get("SHOP_DB_HOST", ""),
        "PORT": os.environ.get("SHOP_DB_PORT", ""),
        "USER": os.environ.get("SHOP_DB_USER", ""),
        "PASSWORD": os.environ.get("SHOP_DB_PASSWORD", ""),
    }
}

VIEWKEEPER = {
    "PROJECT": BASE_DIR,  # holds views/
    "DATABASE": "default",
    # 0003_widen_amount changes a column that sales_summary reads: drop the views first.
    "DROP_FIRST": os.environ.get("SHOP_DROP_FIRST", "1") == "1",
}
