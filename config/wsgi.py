import os

from django.core.wsgi import get_wsgi_application

from config.chunked import ChunkedBodies

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Around Django, not inside it: Django decides how much body there is to read before any
# of its middleware runs.
application = ChunkedBodies(get_wsgi_application())
