from services.alerting.settings import get_alerting_settings
from shared.app import make_app
from shared.settings import get_settings

settings = get_settings()
alerting_settings = get_alerting_settings()
app = make_app(
    "alerting", alerting_settings.alerting_web_port, settings, secrets=alerting_settings.secret_values()
)
