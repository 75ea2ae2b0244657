"""One APIRouter per tab of the lab (plus the page, status, jobs); web/app.py includes them in this order."""

from machinegaze.web.routes import detect, dream, gallery, generate, jobs, page, project, status, uncanny

ROUTERS = [
    page.router,
    status.router,
    detect.router,
    generate.router,
    project.router,
    dream.router,
    uncanny.router,
    jobs.router,
    gallery.router,
]
