"""
C{python -m tcpdemo.client}: the same as the C{tcpdemo-client} script.
"""

from tcpdemo.client.cli import main

if __name__ == "__main__":
    main()
