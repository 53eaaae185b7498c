from tokenstile.cli import main

main()
