from services.anomaly.settings import get_anomaly_settings
from shared.app import make_app
from shared.settings import get_settings

settings = get_settings()
anomaly_settings = get_anomaly_settings()
app = make_app("anomaly", anomaly_settings.anomaly_web_port, settings)
