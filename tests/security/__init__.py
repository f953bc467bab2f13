"""The attack suite: code inside a session is hostile (it runs as root in its sandbox). Each test reproduces an attack
for real, against real sessions in real containers, and asserts it is refused or harmless."""
