from charbot.cli import main

main()
