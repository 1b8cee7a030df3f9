from resexp.cli import app

app(prog_name="resexp")
