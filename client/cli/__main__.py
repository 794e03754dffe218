from client.cli.app import main

main()
