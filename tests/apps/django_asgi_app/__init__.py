"""A Django 5 project served through its ASGI handler (asyncio) for the end-to-end tests."""
