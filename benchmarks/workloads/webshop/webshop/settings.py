# The test service's settings (tests/integration/servers/shop, on PYTHONPATH): the same Django
# configuration, callspan's middleware when SHOP_CALLSPAN=1; this application's URLs and code.
from shop.settings import *  # noqa: F403

ROOT_URLCONF = "webshop.urls"
CALLSPAN = {"include": ["request_mix"]}
