import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")  # DjangoInstrumentor reads it
workers = 2


def post_fork(server, worker):
    # What the OpenTelemetry documentation advises for pre-fork servers: the SDK per worker.
    import otel_setup

    otel_setup.configure("django")
