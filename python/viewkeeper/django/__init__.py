"""The Django app: reconciles the declared views after every `manage.py migrate`.

INSTALLED_APPS += ["viewkeeper.django"]
VIEWKEEPER = {"PROJECT": BASE_DIR, "DATABASE": "default", "DROP_FIRST": False}
"""
