"""Settings from the environment, as a FastAPI application reads them."""
import os
import warnings

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./app.db")
warnings.warn("app.settings: DEBUG is on", UserWarning)
