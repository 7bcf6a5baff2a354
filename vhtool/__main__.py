from vhtool.cli.app import main

main()
