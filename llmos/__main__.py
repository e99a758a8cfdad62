from llmos.cli import main

main()
