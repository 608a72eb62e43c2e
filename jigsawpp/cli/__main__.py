from jigsawpp.cli import main

main()
