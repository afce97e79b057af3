"""Hello apps on asyncio frameworks for bench/peers_apps.py (on its PYTHONPATH)."""
