from django.http import HttpResponse
from request_mix import handle_request, make_bodies

BODIES = make_bodies(200)


def item(request, n: int) -> HttpResponse:
    return HttpResponse(handle_request(BODIES[n % len(BODIES)]).encode(), content_type="application/json")
