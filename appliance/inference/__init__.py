"""The inference API: a FastAPI app over the trained model, served by uvicorn.

Run `python -m appliance.inference --help`; supervisord runs exactly that as `inference`.
"""
