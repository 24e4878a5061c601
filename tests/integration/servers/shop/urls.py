from django.urls import path

from shop import views

urlpatterns = [path("item/<int:n>", views.item)]
