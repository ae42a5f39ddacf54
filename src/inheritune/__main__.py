from inheritune.cli import entry

entry()
