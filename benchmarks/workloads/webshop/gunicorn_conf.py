import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webshop.settings")  # DjangoInstrumentor reads it


def post_fork(server, worker):
    import otel_setup
    import webshop_profile

    otel_setup.configure("django")
    webshop_profile.start()
