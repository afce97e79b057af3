"""A minimal Django project in one package for the end-to-end tests (served as WSGI)."""
