from services.engagement.settings import get_engagement_settings
from shared.app import make_app
from shared.settings import get_settings

settings = get_settings()
engagement_settings = get_engagement_settings()
app = make_app("engagement", settings.engagement_web_port)
