from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import admin as demo_admin  # noqa: F401  (the User admin with the console's action)
from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("demo/send/", views.demo_send, name="demo_send"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("notifications.urls")),
]
