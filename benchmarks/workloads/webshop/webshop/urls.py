from django.urls import path

from webshop import views

urlpatterns = [path("item/<int:n>", views.item)]
