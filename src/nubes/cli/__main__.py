from nubes.cli.main import main

main()
