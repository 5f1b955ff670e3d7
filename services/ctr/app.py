from shared.app import make_app
from shared.settings import get_settings

settings = get_settings()
app = make_app("ctr", settings.ctr_web_port)
