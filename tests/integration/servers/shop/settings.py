import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
USE_TZ = True
MIDDLEWARE = ["callspan.production.django.CallspanMiddleware"] if os.environ.get("SHOP_CALLSPAN", "1") == "1" else []
CALLSPAN = {"include": ["shop"]}
