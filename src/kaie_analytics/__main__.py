from kaie_analytics.cli import main

main()
