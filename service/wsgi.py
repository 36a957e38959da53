"""WSGI entry point for gunicorn: ``gunicorn -c service/http_server/gunicorn_conf.py service.wsgi:app``."""

from service.app import create_app

app = create_app()
